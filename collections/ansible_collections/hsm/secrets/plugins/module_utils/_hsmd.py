# -*- coding: utf-8 -*-
# Copyright: hsmd contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The one door from the hsm.secrets modules into the installed ``hsmd`` package.

Modules are thin adapters (argspec + a short main); every decision lives in ``hsmd``. This file
imports it once, guarded, so a controller without hsmd gets ``missing_required_lib`` instead of
a traceback, and translates hsmd's error model to ``fail_json`` in one place.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import traceback

from ansible.module_utils.basic import missing_required_lib

HSMD_IMPORT_ERROR = None
try:
    import hsmd  # noqa: F401
    from hsmd import errors as hsmd_errors
except ImportError:  # pragma: no cover - exercised only where hsmd is absent
    HSMD_IMPORT_ERROR = traceback.format_exc()
    hsmd_errors = None


def require_hsmd(module):
    """Fail the module cleanly when hsmd is not importable by the module's interpreter."""
    if HSMD_IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("hsmd"), exception=HSMD_IMPORT_ERROR)


def fail_from_error(module, error, **extra):
    """hsmd error -> fail_json: the stable code, whether it is temporary, a message without values."""
    module.fail_json(
        msg=str(error),
        error_code=getattr(error, "code", "internal"),
        temporary=bool(getattr(error, "temporary", False)),
        **extra
    )


def run(module, action, *args, **kwargs):
    """Call ``action`` and translate any HsmdError to fail_json; return its result otherwise."""
    require_hsmd(module)
    try:
        return action(*args, **kwargs)
    except hsmd_errors.HsmdError as error:
        fail_from_error(module, error)
