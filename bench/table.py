"""The benchmarks' result tables: one row per dict, fixed-width columns, '-' where a row has no value."""
from __future__ import annotations


def print_table(columns: list[tuple[str, str, str]], rows: list[dict]) -> None:
    """`columns`: (header, key, format spec such as '>8'); a row with an 'error' prints it after its first cell."""
    print("\n" + " ".join(format(header, spec) for header, _, spec in columns))
    _, first_key, first_spec = columns[0]
    for row in rows:
        if "error" in row:
            print(f"{format(str(row[first_key]), first_spec)} error: {row['error']}")
            continue
        print(" ".join(format("-" if row.get(key) is None else str(row[key]), spec) for _, key, spec in columns))
