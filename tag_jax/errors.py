"""Errors a user can fix: reported as one line, with a non-zero exit status, by `tag_jax.main`."""


class UserError(Exception):
    """Bad input (config value, data file, workdir, checkpoint). The message says what to do."""

    exit_code = 2


class TrainingDiverged(UserError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 3
