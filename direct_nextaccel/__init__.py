"""direct-nextaccel: discrete autoregressive MRI reconstruction (NextAccel, MIAR) as a DIRECT plugin.

Importing this package is cheap (no torch). The plugin is active in every interpreter through the
``direct_nextaccel.pth`` file the wheel installs; :func:`register` does the same by hand where ``.pth`` files are not
processed (``python -S``, ``pip install --target``).
"""

__version__ = "0.1.0"


def register() -> None:
    """Make this and every other ``direct.plugins`` / ``direct.mask_functions`` / ``direct.losses`` entry visible to
    DIRECT in the running interpreter. Idempotent."""
    from direct_nextaccel import _hook

    _hook.install()
