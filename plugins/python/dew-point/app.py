"""The dew-point operator as a weir transformer component (world `transformer`)."""

from weir_guest.component import export_transform

from logic import DewPoint

Transform = export_transform(DewPoint)
