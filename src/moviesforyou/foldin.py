"""Kept for models registered before the layers: their code copy (``code_paths``)
imports ``moviesforyou.foldin``. The fold-in is :mod:`moviesforyou.foundation.foldin`."""

from moviesforyou.foundation.foldin import *  # noqa: F403
