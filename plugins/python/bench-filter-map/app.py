"""bench-filter-map as a weir transformer component (world `transformer`)."""

from weir_guest.component import export_transform

from logic import BenchFilterMap

Transform = export_transform(BenchFilterMap)
