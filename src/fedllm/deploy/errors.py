"""What a node may tell the server when it does not answer.

A node's error travels to the server (Flower's error reply, then ``metrics.jsonl``
``dropped[].reason``), so it must never carry the node's data, paths or log text.
Every failure on a node is reported as a short fixed category; the detail stays in
the node's own log. The one exception is :class:`NodeRefusal`: a rule the node's
owner set (its node config) refusing what the server asked, whose message names the
rule and is meant for the server.
"""

from __future__ import annotations


class NodeRefusal(RuntimeError):
    """The node refuses the run or a message by a rule of its own node config.

    The message goes to the server as it is: name the rule and what the server asked
    (``"node policy: max-rounds = 5, the server asked for round 6"``), never data or
    paths.
    """
