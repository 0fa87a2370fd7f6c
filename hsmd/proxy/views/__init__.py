"""One blueprint per area: health probes, secrets, bulk import/export, devices, the OpenAPI doc."""
