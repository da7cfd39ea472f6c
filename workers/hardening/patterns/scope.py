"""scope_mismatch: the attempt changed files its phase scope does not allow; revert exactly those."""

from __future__ import annotations

from shared.scope import in_scope
from workers.changes import ChangedPath, changed_paths, revert_paths
from workers.gitcmd import GitError, git
from workers.hardening.base import FailureContext, MitigationResult
from workers.hardening.patterns.common import BasePattern


class ScopeMismatch(BasePattern):
    """Reverts the out-of-scope changes of an attempt and keeps its in-scope work for the retry."""

    pattern_id = "scope_mismatch"
    name = "Changes outside the phase scope"
    priority = 10

    def _detect(self, ctx: FailureContext) -> bool:
        return bool(ctx.outside_scope)

    def _mitigate(self, ctx: FailureContext) -> MitigationResult:
        wanted = sorted(set(ctx.outside_scope))
        changes = {change.path: change for change in changed_paths(ctx.worktree)}
        result = MitigationResult()
        failed: list[str] = []
        for path in wanted:
            change = changes.get(path)
            if change is None:
                # already back to HEAD (e.g. the attempt undid it itself): nothing to do
                continue
            try:
                reverted = self._revert(ctx, change)
            except GitError as error:
                failed.append(f"{path} ({error})")
                continue
            if reverted:
                result.actions_taken.append(f"reverted {path} (outside scope)")
            else:
                failed.append(path)
        result.changed = bool(result.actions_taken)
        kept = sorted(path for path in changes if path not in wanted and in_scope(path, ctx.scope))
        if result.changed and kept:
            result.actions_taken.append(f"kept {len(kept)} in-scope change(s)")
        if failed:
            result.suggestions.append("could not revert " + ", ".join(failed))
        if not result.changed:
            result.suggestions.append(
                "keep the phase's changes within its scope: " + ", ".join(ctx.scope)
            )
        return result

    @staticmethod
    def _revert(ctx: FailureContext, change: ChangedPath) -> bool:
        """Revert one path; a staged rename's new name is not in HEAD, so it is removed like an added file."""
        if change.status == "R":
            target = ctx.worktree / change.path
            resolved = target.resolve()
            if not resolved.is_relative_to(ctx.worktree.resolve()):
                return False
            git(["rm", "-q", "--cached", "--force", "--", change.path], cwd=ctx.worktree)
            if target.is_file() or target.is_symlink():
                target.unlink()
            return True
        return bool(revert_paths(ctx.worktree, [change.path]))
