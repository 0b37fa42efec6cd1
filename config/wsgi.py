import gc
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()

# Everything imported so far (Django, DRF, scikit-learn, numpy: ~250k objects) lives as long as
# the process. Moving it out of the collector's reach makes each full collection scan a few
# thousand objects instead: a batch predict allocates thousands of dicts, and the collections
# that triggered cost ~4 ms per 1,000-row request before this (~1 ms after). In a process that
# forks after import it also keeps those pages shared (no copy-on-write from GC bookkeeping).
gc.freeze()
