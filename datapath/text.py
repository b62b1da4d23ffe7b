"""Plain-text tables for the CLI."""


def table(rows: list[tuple], indent: str = "  ") -> str:
    """Left-aligned columns; the first row is the header."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(indent + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
                     for r in rows)
