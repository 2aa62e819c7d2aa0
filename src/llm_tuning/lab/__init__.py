"""The laboratory: methods compared on one budget (compare, report), memory estimated (estimate), generation
scored (metrics, scoring)."""
