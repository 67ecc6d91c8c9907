"""Small helpers the lessons share: fast mode and where figures go.

A lesson (``lessons/NN_name.py``, ``# %%`` cells) runs top to bottom as a script or cell
by cell in a notebook. Two environment variables steer it:

* ``MINIDL_FAST=1``: less data and fewer epochs (CI runs every lesson this way);
* ``MINIDL_FIGURES``: the folder its PNG figures are written to (default
  ``lessons/figures`` when run from the repository root, ``figures`` when run from inside
  ``lessons/``, as a notebook is).
"""
import os

__all__ = ["FAST", "is_fast", "figures_dir", "savefig"]


def is_fast():
    """True when ``MINIDL_FAST`` is set to a true value (``1``, ``true``, ``yes``)."""
    return os.environ.get("MINIDL_FAST", "").strip().lower() in ("1", "true", "yes", "on")


FAST = is_fast()


def figures_dir():
    """The folder for figures (created if missing); see the module docstring."""
    path = os.environ.get("MINIDL_FIGURES")
    if not path:
        here = os.getcwd()
        if os.path.basename(here) == "lessons":
            path = "figures"
        else:
            path = os.path.join("lessons", "figures")
    os.makedirs(path, exist_ok=True)
    return path


def savefig(fig, name, dpi=110):
    """Save matplotlib figure ``fig`` as ``<figures_dir>/<name>.png`` and return the path.

    Headless-safe: nothing is shown; call ``plt.show()`` yourself in a notebook if wanted.
    """
    path = os.path.join(figures_dir(), name if name.endswith(".png") else name + ".png")
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
