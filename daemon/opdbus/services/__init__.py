"""Domain logic, bus-agnostic and async: jobs, audit, authorization, validation..."""
