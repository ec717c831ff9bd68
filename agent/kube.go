package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// Kube is a small client of the Kubernetes API server: the few calls the agent and the check make, over plain
// net/http with the pod's ServiceAccount token (read again for every request: the kubelet rotates it).
type Kube struct {
	Base      string // https://host:port
	TokenFile string // empty: no Authorization header (tests)
	HTTP      *http.Client
}

const serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// InClusterKube talks to the API server the pod's environment names, with its ServiceAccount.
// KUBE_API_URL overrides the address (tests).
func InClusterKube() (*Kube, error) {
	if base := os.Getenv("KUBE_API_URL"); base != "" {
		return &Kube{Base: strings.TrimSuffix(base, "/"), TokenFile: os.Getenv("KUBE_TOKEN_FILE"), HTTP: &http.Client{}}, nil
	}
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return nil, errors.New("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are unset: not running in a pod")
	}
	ca, err := os.ReadFile(serviceAccountDir + "/ca.crt")
	if err != nil {
		return nil, fmt.Errorf("the ServiceAccount's CA certificate: %w (is automountServiceAccountToken off?)", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, errors.New("no certificate in " + serviceAccountDir + "/ca.crt")
	}
	transport := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout: 10 * time.Second,
		IdleConnTimeout:     90 * time.Second,
	}
	return &Kube{Base: "https://" + net.JoinHostPort(host, port), TokenFile: serviceAccountDir + "/token",
		HTTP: &http.Client{Transport: transport}}, nil
}

// APIError is an answer of the API server other than 2xx: its status code and message.
type APIError struct {
	Code    int
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%d %s: %s", e.Code, http.StatusText(e.Code), e.Message)
}

// IsNotFound reports whether err says that the object does not exist.
func IsNotFound(err error) bool {
	var apiErr *APIError
	return errors.As(err, &apiErr) && apiErr.Code == http.StatusNotFound
}

func (k *Kube) request(ctx context.Context, method, path, contentType string, body any) (*http.Response, error) {
	var reader io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		reader = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, k.Base+path, reader)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	if k.TokenFile != "" {
		token, err := os.ReadFile(k.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("the ServiceAccount token: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	}
	res, err := k.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	if res.StatusCode/100 != 2 {
		defer res.Body.Close()
		data, _ := io.ReadAll(io.LimitReader(res.Body, 64<<10))
		var status struct{ Message string }
		if json.Unmarshal(data, &status) != nil || status.Message == "" {
			status.Message = strings.TrimSpace(string(data))
		}
		return nil, &APIError{Code: res.StatusCode, Message: status.Message}
	}
	return res, nil
}

// Do sends one request and decodes the answer into out (unless nil). A call never takes longer than 20 s.
func (k *Kube) Do(ctx context.Context, method, path, contentType string, body, out any) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	res, err := k.request(ctx, method, path, contentType, body)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if out == nil {
		_, err = io.Copy(io.Discard, res.Body)
		return err
	}
	return json.NewDecoder(res.Body).Decode(out)
}

// Get reads one object.
func (k *Kube) Get(ctx context.Context, path string, out any) error {
	return k.Do(ctx, http.MethodGet, path, "", nil, out)
}

// WatchEvent is one line of a watch stream.
type WatchEvent struct {
	Type   string          `json:"type"` // ADDED, MODIFIED, DELETED, BOOKMARK, ERROR
	Object json.RawMessage `json:"object"`
}

// Watch streams the events of the objects PATH (a collection) selects, from resourceVersion RV, to fn, until the
// server ends the stream (nil), ctx ends, or fn fails.
func (k *Kube) Watch(ctx context.Context, path string, query url.Values, fn func(WatchEvent) error) error {
	query.Set("watch", "true")
	query.Set("allowWatchBookmarks", "true")
	res, err := k.request(ctx, http.MethodGet, path+"?"+query.Encode(), "", nil)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	scanner := bufio.NewScanner(res.Body)
	scanner.Buffer(make([]byte, 64<<10), 4<<20)
	for scanner.Scan() {
		var event WatchEvent
		if err := json.Unmarshal(scanner.Bytes(), &event); err != nil {
			return fmt.Errorf("a watch event: %w", err)
		}
		if err := fn(event); err != nil {
			return err
		}
	}
	if err := scanner.Err(); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// Object paths.

func servicePath(namespace, name string) string {
	return "/api/v1/namespaces/" + url.PathEscape(namespace) + "/services/" + url.PathEscape(name)
}

func podPath(namespace, name string) string {
	return "/api/v1/namespaces/" + url.PathEscape(namespace) + "/pods/" + url.PathEscape(name)
}

func configMapPath(namespace, name string) string {
	return "/api/v1/namespaces/" + url.PathEscape(namespace) + "/configmaps/" + url.PathEscape(name)
}

func statefulSetPath(namespace, name string) string {
	return "/apis/apps/v1/namespaces/" + url.PathEscape(namespace) + "/statefulsets/" + url.PathEscape(name)
}

// The fields of the objects the agent reads.

type ObjectMeta struct {
	Name              string            `json:"name"`
	Namespace         string            `json:"namespace,omitempty"`
	UID               string            `json:"uid,omitempty"`
	ResourceVersion   string            `json:"resourceVersion,omitempty"`
	Generation        int64             `json:"generation,omitempty"`
	Labels            map[string]string `json:"labels,omitempty"`
	DeletionTimestamp *time.Time        `json:"deletionTimestamp,omitempty"`
}

type Service struct {
	Metadata ObjectMeta `json:"metadata"`
	Spec     struct {
		IPFamilyPolicy string `json:"ipFamilyPolicy,omitempty"`
	} `json:"spec"`
	Status struct {
		LoadBalancer struct {
			Ingress []struct {
				IP       string `json:"ip,omitempty"`
				Hostname string `json:"hostname,omitempty"`
			} `json:"ingress,omitempty"`
		} `json:"loadBalancer"`
	} `json:"status"`
}

type Pod struct {
	Metadata ObjectMeta `json:"metadata"`
	Status   struct {
		InitContainerStatuses []ContainerStatus `json:"initContainerStatuses,omitempty"`
		ContainerStatuses     []ContainerStatus `json:"containerStatuses,omitempty"`
	} `json:"status"`
}

type ContainerStatus struct {
	Name         string `json:"name"`
	Image        string `json:"image"`
	Ready        bool   `json:"ready"`
	RestartCount int    `json:"restartCount"`
	State        struct {
		Waiting *struct {
			Reason  string `json:"reason"`
			Message string `json:"message"`
		} `json:"waiting,omitempty"`
	} `json:"state"`
}

type StatefulSet struct {
	Metadata ObjectMeta `json:"metadata"`
	Status   struct {
		ObservedGeneration int64  `json:"observedGeneration"`
		UpdateRevision     string `json:"updateRevision"`
	} `json:"status"`
}

type ConfigMap struct {
	Metadata ObjectMeta        `json:"metadata"`
	Data     map[string]string `json:"data,omitempty"`
}
