"""Names that cross process boundaries: task names, branch and path layouts."""

from __future__ import annotations

TASK_EXECUTE_RUN = "runs.execute"
RUN_BRANCH_PREFIX = "autopack/run/"
CHECKPOINT_AUTHOR_NAME = "Autopack"
CHECKPOINT_AUTHOR_EMAIL = "autopack@localhost"
API_KEY_PREFIX = "ap_"


CHECKPOINT_REF_PREFIX = "refs/autopack/checkpoints/"


def checkpoint_ref(run_id: str) -> str:
    """The hidden ref a run's latest checkpoint is pushed to on the origin."""
    return f"{CHECKPOINT_REF_PREFIX}{run_id}"


def run_branch(run_id: str) -> str:
    """The branch a run's checkpoints are committed to."""
    return f"{RUN_BRANCH_PREFIX}{run_id}"
