"""Keras 3 on the torch backend: ``keras_probe`` before training, ``GradHealthKerasCallback``
watching ``model.fit``, and remedies in Keras terms (``keras_finding``, ``keras_remedy``).

Importing this package never imports keras (that picks keras's backend for the whole
process): keras is imported when the probe runs or the callback is constructed. See
``gradhealth.integrations.keras.callback`` for how Keras layers are observed.
"""

from gradhealth.integrations.keras.callback import GradHealthKerasCallback, layer_view
from gradhealth.integrations.keras.probe import keras_probe
from gradhealth.integrations.keras.remedies import keras_finding, keras_remedy

__all__ = ["GradHealthKerasCallback", "keras_finding", "keras_probe", "keras_remedy",
           "layer_view"]
