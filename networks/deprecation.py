"""Renamed names of ``networks``, still accepted for one version with a ``DeprecationWarning``.

The constructors share one naming scheme: ``spatial_dims``, ``in_channels``, ``out_channels`` and ``features`` (the
width, or the widths of the resolution levels). Arguments that had other names (``base_filters``, ``widths``,
``num_classes``, ``nf``/``gc``/``nb``, ``base_features``) and the classes renamed so that they cannot be mistaken for
MONAI's (``UNet`` -> ``KerasUNet``, ...) keep working until :data:`REMOVED_IN`, with a warning that names the new one.

The warnings come from MONAI's own decorators, ``monai.utils.deprecated_arg`` and ``monai.utils.deprecated``, compared
against this package's version (:data:`PACKAGE_VERSION`, that of ``pyproject.toml``) instead of MONAI's: from
:data:`REMOVED_IN` on, the old names raise ``monai.utils.DeprecatedError``. What MONAI lacks, and this module adds:

- :func:`check_renamed`: ``deprecated_arg(new_name=...)`` copies the old argument to the new one, but when a caller
  gives both it silently keeps the new one; here that is an error naming both.
- :func:`deprecated_alias_getattr`: a module-level ``__getattr__`` (PEP 562) for renamed blocks, which warns when the
  old name is imported (MONAI's ``deprecated`` wraps a class's ``__init__``, so it cannot alias a class under another
  name without a subclass, which would break ``isinstance`` checks written against the old name).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

from monai.utils import deprecated, deprecated_arg

__all__ = [
    "PACKAGE_VERSION",
    "DEPRECATED_SINCE",
    "REMOVED_IN",
    "renamed_args",
    "check_renamed",
    "deprecated_class",
    "deprecated_alias_getattr",
]

#: this package's version (``pyproject.toml``'s ``[project] version``; ``tests/networks/test_deprecation.py`` checks it)
PACKAGE_VERSION = "0.1.0"
#: the version in which the names were changed
DEPRECATED_SINCE = "0.1.0"
#: the version from which the old names raise ``monai.utils.DeprecatedError``
REMOVED_IN = "0.2.0"

F = TypeVar("F", bound=Callable[..., Any])
#: the warning class: MONAI annotates ``warning_category`` as ``type[FutureWarning]`` (its default), but it takes any
#: warning class, and this package's deprecations are ``DeprecationWarning``s
_CATEGORY = cast(type[FutureWarning], DeprecationWarning)


def renamed_args(**old_to_new: str) -> Callable[[F], F]:
    """Decorate a constructor or function so that each old keyword ``old=...`` is passed on as ``new=...`` with a
    ``DeprecationWarning`` (``monai.utils.deprecated_arg`` with ``new_name``).

    A function without ``**kwargs`` must keep each old name as a parameter (default ``None``), which it hands to
    :func:`check_renamed` to refuse a call that gives both names.
    """

    def decorator(func: F) -> F:
        decorated: Any = func
        for old, new in old_to_new.items():
            decorated = deprecated_arg(
                old,
                since=DEPRECATED_SINCE,
                removed=REMOVED_IN,
                msg_suffix=f"Use `{new}` instead.",
                version_val=PACKAGE_VERSION,
                new_name=new,
                warning_category=_CATEGORY,
            )(decorated)
        return cast(F, decorated)

    return decorator


def check_renamed(owner: str, new: str, new_value: Any, old: str, old_value: Any) -> None:
    """Raise when the deprecated ``old`` was given besides ``new``.

    :func:`renamed_args` hands the old value on as the new one (the same object); any other ``old_value`` than
    ``None`` or that object means the caller gave both.
    """
    if old_value is not None and old_value is not new_value:
        raise ValueError(
            f"{owner}: got both {new}={new_value!r} and its deprecated name {old}={old_value!r}; give {new} alone."
        )


def deprecated_class(new_name: str) -> Callable[[type], type]:
    """Decorate a subclass that keeps an old class name: instantiating it warns (``monai.utils.deprecated``)."""
    return deprecated(
        since=DEPRECATED_SINCE,
        removed=REMOVED_IN,
        msg_suffix=f"Use `{new_name}` instead.",
        version_val=PACKAGE_VERSION,
        warning_category=_CATEGORY,
    )


def deprecated_alias_getattr(module: str, aliases: Mapping[str, tuple[str, Callable[[], Any]]]) -> Callable:
    """A module ``__getattr__`` that resolves each old name of ``aliases`` (``{old: (new name, getter)}``) with a
    ``DeprecationWarning`` naming the new one; other names raise ``AttributeError`` as usual."""

    def __getattr__(name: str) -> Any:
        if name in aliases:
            new, getter = aliases[name]
            warnings.warn(
                f"{module}.{name} has been deprecated since version {DEPRECATED_SINCE}. It will be removed in version "
                f"{REMOVED_IN}. Use `{new}` instead.",
                DeprecationWarning,
                stacklevel=2,
            )
            return getter()
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
