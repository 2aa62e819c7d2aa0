"""The laboratory: methods compared on one budget (compare, report), memory estimated (estimate), their answers
scored (points, with evaluate/)."""
