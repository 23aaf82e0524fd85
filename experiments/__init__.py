"""Experiments: commands that run many training runs through `sdpg.run.RunHandle` and write result pages.

Each experiment is resumable (finished runs are skipped, interrupted ones continue from their checkpoint)
and writes its normal run directories, so every run can also be opened in the dashboard.
"""
