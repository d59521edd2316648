"""`evaluate` module: mean average precision (mAP@all / mAP@k) for sketch-based image retrieval.

Load it offline with ``evaluate.load(<this folder>)`` or ``hf_sbir.metrics.load_metric("sbir_map")``.
The computation is `hf_sbir.metrics.retrieval_metrics.mean_average_precision`.
"""

import datasets
import evaluate
import numpy as np

from hf_sbir.metrics.retrieval_metrics import mean_average_precision

_CITATION = """\
@inproceedings{dutta2019sempcyc,
  title={Semantically Tied Paired Cycle Consistency for Zero-Shot Sketch-based Image Retrieval},
  author={Dutta, Anjan and Akata, Zeynep},
  booktitle={CVPR},
  year={2019}
}
"""

_DESCRIPTION = """\
Mean average precision of a category-level retrieval (e.g. zero-shot sketch-based image retrieval).
Each prediction is one query's row of similarities to every gallery item (higher = better); the
reference is the query's class. A gallery item is relevant when its class equals the query's.
Ties are broken by gallery index (ascending). `k=None` gives textbook mAP@all,
AP = (1/R) sum_i P@i rel_i with R the relevant items in the gallery. For mAP@k the default
normaliser is the number of relevant items retrieved in the top k (`normalize="retrieved"`, the
SEM-PCYC / zero-shot SBIR convention for mAP@200); `"min_k_relevant"` divides by min(k, R) and
`"total_relevant"` by R. A query whose class is absent from the gallery scores 0
(`no_relevant="zero"`) or is left out (`no_relevant="exclude"`).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): one row of G similarities per query.
    references (`list` of `int`): the class of each query.
    gallery_labels (`list` of `int`): the class of each of the G gallery items (required).
    k (`int`, *optional*): cut-off; None (default) = whole ranking. Clipped to G.
    normalize (`str`): "retrieved" (default), "min_k_relevant" or "total_relevant" (AP@k only).
    no_relevant (`str`): "zero" (default) or "exclude".
    exclude_self (`bool`): queries and gallery are the same set; drop each query from its own gallery.
Returns:
    `{"map@all": float}` when k is None, else `{"map@<k>": float}`.
Examples:
    >>> from hf_sbir.metrics import load_metric
    >>> metric = load_metric("sbir_map")
    >>> metric.compute(predictions=[[0.9, 0.8, 0.7]], references=[1], gallery_labels=[1, 0, 1])
    {'map@all': 0.8333333333333333}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SbirMap(evaluate.Metric):
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
            reference_urls=["https://github.com/AnjanDutta/sem-pcyc"],
        )

    def _compute(
        self,
        predictions,
        references,
        gallery_labels=None,
        k=None,
        normalize="retrieved",
        no_relevant="zero",
        exclude_self=False,
    ):
        if gallery_labels is None:
            raise ValueError("sbir_map needs `gallery_labels=` (the class of every gallery item)")
        scores = np.asarray([np.asarray(row, dtype=np.float32) for row in predictions], dtype=np.float32)
        value = mean_average_precision(
            scores,
            np.asarray(references, dtype=np.int64),
            np.asarray(gallery_labels, dtype=np.int64),
            k=k,
            normalize=normalize,
            no_relevant=no_relevant,
            exclude_self=exclude_self,
        )
        return {"map@all" if k is None else f"map@{k}": value}
