"""Pictures and widgets from engine records: plotly figures and HTML for the dashboard and notebooks.

Design choices:
- Every view is a plain function: record dicts in (metrics rows, rollout groups, config dict),
  a `go.Figure` or an HTML string out. No view computes a loss; where a view needs an engine
  quantity (the beta schedule, the Prop. 3.1 token advantage) it calls the engine's function.
- One module per picture family: `curves`, `heatmap`, `advantages`, `inspector`, `whatif`, `status`,
  `compare`, `playground`, `overlay` (run comparison), `warmstart`; `style` holds the shared palette and layout.
- `viewmodel` decides what a run's faces show (version, status card, browsable steps, picked group);
  the page (`app.py`) and the notebook widget (`widgets`) are thin adapters over it.
"""
from lab.advantages import advantage_evolution, advantage_histogram
from lab.compare import comparison_figures
from lab.curves import PANELS, curves_figure, planned_beta
from lab.heatmap import COLOR_MODES, token_heatmap
from lab.inspector import rollout_html, topk_figure
from lab.playground import PROBE_FIELDS, gap_table_html, logq_figure, probe_summary_html, topk_html, variant_heatmap
from lab.status import message_html, status_html
from lab.style import empty_figure
from lab.whatif import whatif_figure
from sdpg.run import replay_status  # a recording's status is the engine's reading; views and tests reach it here too

__all__ = [
    "COLOR_MODES", "PANELS", "advantage_evolution", "advantage_histogram", "comparison_figures", "curves_figure", "empty_figure",
    "message_html", "planned_beta", "replay_status", "rollout_html", "status_html", "token_heatmap", "topk_figure",
    "whatif_figure", "PROBE_FIELDS", "gap_table_html", "logq_figure", "probe_summary_html", "topk_html",
    "variant_heatmap",
]
