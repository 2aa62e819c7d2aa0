"""The laboratory: methods compared on one budget (compare, report), generation scored (metrics, scoring)."""
