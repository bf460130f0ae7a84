"""Screens: the overview, a matrix in detail, the comparison, mitigation, fine-tuning runs and
studies, and the modal dialogs. The app opens them from here."""

from spectui.tui.screens.compare import CompareScreen
from spectui.tui.screens.dialogs import HelpScreen, ThresholdsScreen
from spectui.tui.screens.matrix import MatrixScreen
from spectui.tui.screens.mitigate import MitigateScreen
from spectui.tui.screens.overview import OverviewScreen
from spectui.tui.screens.runs import RunScreen, RunsScreen
from spectui.tui.screens.study import StudyScreen, open_studies
from spectui.tui.screens.train import TrainScreen

__all__ = ["CompareScreen", "HelpScreen", "MatrixScreen", "MitigateScreen", "OverviewScreen", "RunScreen",
           "RunsScreen", "StudyScreen", "ThresholdsScreen", "TrainScreen", "open_studies"]
