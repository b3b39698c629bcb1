"""Frontend: .kdl source -> AST (parser) -> graph IR (elaborate), with source locations kept."""
