"""soraflow: the Open-Sora 2.0 training system as a workflow-orchestrated MLOps repository.

Every module is `soraflow.<folder>...`, where <folder> is one of the repository's top-level folders
(`cli/`, `common/`, `components/`, `inference/`, `models/`, `monitoring/`, `pipelines/`, `training/`).
An installed wheel holds them under soraflow/ (setup.py maps each folder into the namespace). In a checkout
the folders stay at the top, and this package finds them there: the checkout's root is added to the package's
search path, so `PYTHONPATH=<checkout>` is all a checkout needs.
"""

import os as _os

_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
# only a source checkout has setup.py beside this folder (an installed wheel's site-packages has none)
if _os.path.isfile(_os.path.join(_checkout, "setup.py")) and _checkout not in __path__:
    __path__.append(_checkout)
