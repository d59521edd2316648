"""`evaluate` module: mean average precision (mAP@all / mAP@k) for sketch-based image retrieval.

Load it offline with ``evaluate.load(<this folder>)`` or ``hf_sbir.metrics.load_metric("sbir_map")``.
The computation is `hf_sbir.metrics.retrieval_metrics.mean_average_precision`.
"""

import datasets
import evaluate
import numpy as np

from hf_sbir.metrics.retrieval_metrics import integer_class_ids, mean_average_precision

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
Ties are broken by gallery index (ascending). `protocol=` picks how AP is computed, so that the
number is the one a published evaluation code reports on the same scores: "textbook" (default:
TREC AP = (1/R) sum_i P@i rel_i over the whole ranking; for mAP@k divided by the relevant items
retrieved in the top k), "sake" / "zse_sbir" / "dsn" / "tc_net" (VOC-interpolated AP; mAP@k divided
by min(k, R); queries without relevant items left out), "sem_pcyc" / "doodle2search"
(`sklearn.metrics.average_precision_score`, ties grouped). See `hf_sbir.metrics.PROTOCOLS` for the
repository and file each preset reproduces. `normalize=` and `no_relevant=` override the preset.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): one row of G similarities per query.
    references (`list` of `int`): the class of each query.
    gallery_labels (`list` of `int`): the class of each of the G gallery items (required).
    k (`int`, *optional*): cut-off; None (default) = whole ranking. Clipped to G.
    protocol (`str`): "textbook" (default), "sake", "zse_sbir", "sem_pcyc", "doodle2search", "dsn", "tc_net".
    normalize (`str`, *optional*): override the protocol's AP@k normaliser: "retrieved",
        "min_k_relevant" or "total_relevant".
    no_relevant (`str`, *optional*): override: "zero" or "exclude".
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
        protocol="textbook",
        normalize=None,
        no_relevant=None,
        exclude_self=False,
    ):
        if gallery_labels is None:
            raise ValueError("sbir_map needs `gallery_labels=` (the class of every gallery item)")
        scores = np.asarray([np.asarray(row, dtype=np.float32) for row in predictions], dtype=np.float32)
        value = mean_average_precision(
            scores,
            np.asarray(references, dtype=np.int64),
            integer_class_ids(gallery_labels, "sbir_map", "gallery_labels"),
            k=k,
            protocol=protocol,
            normalize=normalize,
            no_relevant=no_relevant,
            exclude_self=exclude_self,
        )
        return {"map@all" if k is None else f"map@{k}": value}
