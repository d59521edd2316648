"""`evaluate` module: precision at k (P@k) for sketch-based image retrieval.

Load it offline with ``evaluate.load(<this folder>)`` or ``hf_sbir.metrics.load_metric("sbir_precision")``.
The computation is `hf_sbir.metrics.retrieval_metrics.precision_at_k`.
"""

import datasets
import evaluate
import numpy as np

from hf_sbir.metrics.retrieval_metrics import integer_class_ids, precision_at_k

_CITATION = """\
@inproceedings{dutta2019sempcyc,
  title={Semantically Tied Paired Cycle Consistency for Zero-Shot Sketch-based Image Retrieval},
  author={Dutta, Anjan and Akata, Zeynep},
  booktitle={CVPR},
  year={2019}
}
"""

_DESCRIPTION = """\
Precision at k of a category-level retrieval (e.g. zero-shot sketch-based image retrieval): the
share of the top k gallery items that have the query's class, averaged over queries. Each
prediction is one query's row of similarities to every gallery item (higher = better); ties are
broken by gallery index (ascending). k larger than the gallery is clipped to the gallery size.
`protocol=` picks the definition a published evaluation code uses: "textbook" (default), "sake",
"sem_pcyc", "dsn", "tc_net": hits@k / k; "doodle2search": hits@k / min(k, R); "zse_sbir":
hits@min(k, R) / min(k, R). See `hf_sbir.metrics.PROTOCOLS`. `normalize=` overrides the preset.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): one row of G similarities per query.
    references (`list` of `int`): the class of each query.
    gallery_labels (`list` of `int`): the class of each of the G gallery items (required).
    k (`int`): cut-off (default 100).
    protocol (`str`): "textbook" (default), "sake", "zse_sbir", "sem_pcyc", "doodle2search", "dsn", "tc_net".
    normalize (`str`, *optional*): override: "k", "min_k_relevant" or "hits_at_min_k_relevant".
    no_relevant (`str`, *optional*): override: "zero" or "exclude" (queries whose class is absent
        from the gallery).
    exclude_self (`bool`): queries and gallery are the same set; drop each query from its own gallery.
Returns:
    `{"p@<k>": float}`
Examples:
    >>> from hf_sbir.metrics import load_metric
    >>> metric = load_metric("sbir_precision")
    >>> metric.compute(predictions=[[0.9, 0.8, 0.7]], references=[1], gallery_labels=[1, 0, 1], k=2)
    {'p@2': 0.5}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SbirPrecision(evaluate.Metric):
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
        k=100,
        protocol="textbook",
        normalize=None,
        no_relevant=None,
        exclude_self=False,
    ):
        if gallery_labels is None:
            raise ValueError("sbir_precision needs `gallery_labels=` (the class of every gallery item)")
        scores = np.asarray([np.asarray(row, dtype=np.float32) for row in predictions], dtype=np.float32)
        value = precision_at_k(
            scores,
            np.asarray(references, dtype=np.int64),
            integer_class_ids(gallery_labels, "sbir_precision", "gallery_labels"),
            k=k,
            protocol=protocol,
            normalize=normalize,
            no_relevant=no_relevant,
            exclude_self=exclude_self,
        )
        return {f"p@{k}": value}
