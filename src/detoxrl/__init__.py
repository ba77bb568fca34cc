"""detoxrl: reproducible RLHF (PPO) and DPO experiments for reducing language-model toxicity."""

__version__ = "0.1.0"


class DetoxError(Exception):
    """An error the user can fix (bad input file, bad params key, missing package).

    The CLI prints its message as one line and exits with status 1, without a traceback.
    """
