"""Tasks by name: the only place that maps a recipe's `task` to its implementation."""

from __future__ import annotations

from pathlib import Path

from loraft.recipe import Recipe
from loraft.tasks.base import Task
from loraft.tasks.chat import ChatTask
from loraft.tasks.classification import ClassificationTask
from loraft.tasks.news import NewsTask
from loraft.tasks.persona import PersonaTask
from loraft.tasks.sonnets import SonnetsTask
from loraft.tasks.text import TextTask

TASK_CLASSES: dict[str, type[Task]] = {
    "chat": ChatTask,
    "classification": ClassificationTask,
    "news": NewsTask,
    "persona": PersonaTask,
    "sonnets": SonnetsTask,
    "text": TextTask,
}


def build_task(recipe: Recipe, roots: list[Path], evaluation_only: bool = False) -> Task:
    """The task object for a recipe (`evaluation_only`: `loraft eval`, which needs no train file
    when the recipe has its own eval file)."""
    return TASK_CLASSES[recipe.task](recipe, roots, evaluation_only)
