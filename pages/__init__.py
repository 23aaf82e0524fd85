"""Parts of the dashboard page that stand on their own: each module builds one tab's components and wires them.

Design choices:
- A module here takes what it needs from `app.py` as arguments (the controller, a config builder), never by
  importing `app`, so imports point one way: `app` -> `pages` -> `lab` -> `sdpg`.
- Every control has a unique `elem_id` starting with `sdpg-`, for the browser tests.
"""
