"""The laboratory: methods compared on one budget (compare, report, forgetting, Pareto plots, inference cost), their
answers scored (points, with evaluate/)."""
