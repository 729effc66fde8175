"""KFP components: one file per pipeline step, each a lightweight `@dsl.component` whose body maps
artifact paths to one call of `taskloom.steps` (so it runs the same under kfp.local and in a cluster).

IMAGE is the one container image every step runs in: it holds taskloom, its dependencies and kfp
(built by scripts/images.sh; its name and tag come from taskloom.images)."""

from taskloom import images

IMAGE = images.PLATFORM
