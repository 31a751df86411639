"""The code version recorded in every manifest row (owned by :mod:`data_schema.version`, shared with analysis)."""

from stabilitybench.data_schema.version import code_version

__all__ = ["code_version"]
