"""What the tests and the benchmark share: the repository's facts (repo), the chart's test variants and the values
layered on them (values), the real helm (helm) and its render (render), one wait (wait), the test cluster's settings
(cluster), a release on it (release), the tailnet in a box (tailnet), GitOps objects (custom_object) and throw-away
release keys (release_keys).

Import it as a package (`from support.render import render`): pytest finds it through pyproject's pythonpath, the
benchmark through the editable install scripts/setup makes of this repository."""
