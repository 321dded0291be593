"""The offline routing simulation behind ``erp simulate``: K-fold folds, baselines, metrics, report, plots.

``run.run_simulate`` is the command's entry point; ``summary.simulate`` returns the ``report.Report``.
"""
