"""Names that cross process boundaries: task names, branch and path layouts."""

from __future__ import annotations

TASK_EXECUTE_RUN = "runs.execute"
RUN_BRANCH_PREFIX = "autopack/run/"
CHECKPOINT_AUTHOR_NAME = "Autopack"
CHECKPOINT_AUTHOR_EMAIL = "autopack@localhost"
API_KEY_PREFIX = "ap_"


def run_branch(run_id: str) -> str:
    """The branch a run's checkpoints are committed to."""
    return f"{RUN_BRANCH_PREFIX}{run_id}"
