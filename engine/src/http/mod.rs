//! HTTP/1.1 protocol layer of the node (placeholder; see the node issue).
