"""Imported first by ``linrec.backends.jax``: an older jax fails here with an ``ImportError`` naming the version
linrec needs, instead of an ``AttributeError`` (``jax.ffi``) at the first scan."""

import jax

from linrec.backends import require_version

require_version("jax", jax.__version__)
