from .bdrate import BDResult, bd_metric, bd_rate  # noqa: F401
from .complexity import complexity_report, format_complexity  # noqa: F401
from .rate_task import RateTaskEvaluator, build_task_evaluator  # noqa: F401
from .report import bd_cells, write_report  # noqa: F401
from .results import RateTaskCurve, load_curves, save_curve  # noqa: F401
from .ytvis_evaluation import YTVISEvaluator, evaluate_ytvis  # noqa: F401
