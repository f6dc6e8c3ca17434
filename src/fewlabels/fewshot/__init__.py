"""Few-shot classification of novel classes: a seeded split of the classes into base and
novel, N-way K-shot episodes on the novel ones, and the methods (ProtoNet, Baseline and
Baseline++, MAML, fine-tuning (transfer), nearest class mean on a pretraining run's
features or on raw pixels), registered by name in :data:`FEWSHOT_METHODS`.

    split = split_classes(class_names, novel_count=5, seed=0)
    task = prepare_task("fashion-mnist", split, ways=5, shots=1, queries=15, episodes=600,
                        seed=0, backbone=backbone_spec("convnet", 32, 3, 28))
    result = evaluate_method("protonet", task, FewShotOptions(train_steps=2000))
"""

from fewlabels.fewshot import baseline, features, finetune, maml, protonet  # noqa: F401 - registers
from fewlabels.fewshot.classes import ClassSplit, chosen_split, split_classes
from fewlabels.fewshot.config import FewShotOptions
from fewlabels.fewshot.episodes import Episodes, EpisodeSampler, sample_episodes
from fewlabels.fewshot.evaluation import FewShotResult, evaluate_method
from fewlabels.fewshot.intervals import mean_and_interval
from fewlabels.fewshot.prototypes import nearest_mean_accuracies, prototype_logits
from fewlabels.fewshot.registry import FEWSHOT_METHODS, NEEDS_INIT, MethodOutcome
from fewlabels.fewshot.task import FewShotTask, prepare_task

__all__ = [
    "FEWSHOT_METHODS", "NEEDS_INIT", "ClassSplit", "EpisodeSampler", "Episodes",
    "FewShotOptions", "FewShotResult", "FewShotTask", "MethodOutcome", "chosen_split",
    "evaluate_method", "mean_and_interval", "nearest_mean_accuracies", "prepare_task",
    "prototype_logits", "sample_episodes", "split_classes",
]
