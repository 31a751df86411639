"""``python -m data_schema [table]``: print the declared schema with units."""

import sys

from data_schema.schema import SCHEMA_VERSION, SCHEMAS, describe

tables = sys.argv[1:] or list(SCHEMAS)
for name in tables:
    if name not in SCHEMAS:
        sys.exit(f"error: unknown table {name!r} (one of {', '.join(SCHEMAS)})")
    print(f"# {name} (schema v{SCHEMA_VERSION})")
    for row in describe(name):
        print(f"{row['name']:<20} {row['type']:<8} {row['unit']:<11} {row['description']}")
    print()
