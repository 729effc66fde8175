"""The ModelDeployment operator: a declared model, version and adapter set, made so on every Triton pod.

`taskloom operator` runs it (kopf); the modules split what can be computed without a cluster (the desired
children, the version to serve, the status from pod reports) from what talks to the API server and Triton.
"""
