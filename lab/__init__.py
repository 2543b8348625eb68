"""The lab around the paper's ideas: evidence statistics, the report, controls, GPU speed, the served client and
the test server."""
