"""KFP pipelines composed of the components in `components/`; `compiled/` holds their golden YAML
(`python -m taskloom_pipelines.compile_all`, or `make golden`). Run them with `taskloom pipeline run|compile|submit`."""
