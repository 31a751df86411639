"""``python -m stabilitybench.data_schema [table ...]``: print the declared schema with units.

``python -m stabilitybench.data_schema upgrade CORPUS``: rewrite a corpus's legacy-version files in the current schema.
"""

import sys

from stabilitybench.data_schema.schema import SCHEMA_VERSION, SCHEMAS, describe

args = sys.argv[1:]
if args[:1] == ["upgrade"]:
    from stabilitybench.data_schema.corpus import require_corpus
    from stabilitybench.data_schema.errors import exit_on_user_error
    from stabilitybench.data_schema.migrate import upgrade_corpus

    if len(args) != 2:
        sys.exit("usage: python -m stabilitybench.data_schema upgrade CORPUS")
    exit_on_user_error(lambda: print(f"rewrote {len(upgrade_corpus(require_corpus(args[1])))} file(s) of "
                                     f"{args[1]} in schema {SCHEMA_VERSION}"))
    sys.exit(0)
for name in args or list(SCHEMAS):
    if name not in SCHEMAS:
        sys.exit(f"error: unknown table {name!r} (one of {', '.join(SCHEMAS)})")
    print(f"# {name} (schema v{SCHEMA_VERSION})")
    for row in describe(name):
        print(f"{row['name']:<20} {row['type']:<8} {row['unit']:<11} {row['description']}")
    print()
