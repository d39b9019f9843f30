//! BEP 29 conformance suite (work in progress: see issue 5).
