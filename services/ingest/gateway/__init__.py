"""The HTTP surface of ingest: device and admin auth, bodies and JSON errors, the
OpenAPI contract, public poll reads and show control. Mounted by ``services.ingest.app``;
its state lives under the app keys of ``services.ingest.keys``."""
