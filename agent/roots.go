package main

// The image holds nothing but the binary, so no CA bundle: Mozilla's roots, built in, verify the control server's
// certificate (the agent asks it whether it answers before it logs a relay out). They are used only where the
// system has none. The API server's certificate is verified with the ServiceAccount's CA.
import _ "golang.org/x/crypto/x509roots/fallback"
