"""Split the comma-separated `tasks` parameter into the list a pipeline fans out over."""

from typing import List

from kfp import dsl

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False, packages_to_install=[])
def task_list(tasks: str) -> List[str]:
    """Each item is a built-in task name or the path of a task.yaml."""
    from taskloom.steps import parse_task_list

    return parse_task_list(tasks)
