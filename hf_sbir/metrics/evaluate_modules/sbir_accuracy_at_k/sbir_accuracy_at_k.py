"""`evaluate` module: instance-level Acc@k for fine-grained sketch-based image retrieval.

Load it offline with ``evaluate.load(<this folder>)`` or ``hf_sbir.metrics.load_metric("sbir_accuracy_at_k")``.
The computation is `hf_sbir.metrics.retrieval_metrics.instance_metrics`.
"""

import datasets
import evaluate
import numpy as np

from hf_sbir.metrics.retrieval_metrics import instance_metrics

_CITATION = """\
@inproceedings{yu2016sketch,
  title={Sketch Me That Shoe},
  author={Yu, Qian and Liu, Feng and Song, Yi-Zhe and Xiang, Tao and Hospedales, Timothy M. and Loy, Chen Change},
  booktitle={CVPR},
  year={2016}
}
"""

_DESCRIPTION = """\
Instance-level accuracy at k (Acc@k) of a fine-grained retrieval: the share of queries whose one
true gallery item is among the top k. Each prediction is one query's row of similarities to every
gallery item (higher = better); the reference is the gallery index of that query's true item.
Ties are broken by gallery index (ascending): the target loses ties against lower indices.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): one row of G similarities per query.
    references (`list` of `int`): gallery index (0..G-1) of each query's true match.
    k (`int` or `list` of `int`): cut-off(s) (default [1, 5, 10]); clipped to the gallery size.
    exclude_self (`bool`): queries and gallery are the same set; drop each query from its own gallery.
Returns:
    `{"acc@<k>": float}` for each k.
Examples:
    >>> from hf_sbir.metrics import load_metric
    >>> metric = load_metric("sbir_accuracy_at_k")
    >>> metric.compute(predictions=[[0.9, 0.8, 0.7]], references=[1], k=[1, 2])
    {'acc@1': 0.0, 'acc@2': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SbirAccuracyAtK(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Value("int64"),
                }
            ),
            reference_urls=["https://github.com/seuliufeng/DeepSBIR"],
        )

    def _compute(self, predictions, references, k=(1, 5, 10), exclude_self=False):
        ks = [k] if isinstance(k, int) else list(k)
        scores = np.asarray([np.asarray(row, dtype=np.float32) for row in predictions], dtype=np.float32)
        return instance_metrics(scores, np.asarray(references, dtype=np.int64), ks=ks, exclude_self=exclude_self)
