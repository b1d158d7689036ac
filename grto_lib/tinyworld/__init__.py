"""The tiny world: synthetic worlds for the three settings (``worlds``, ``aerial``, ``drawing``), the stand-in
policy's processor and model configuration (``tiny_qwen``), the stand-in policy and tool and their builds
(``policy_standin``, ``tool_standin``, ``standins``), whether the stand-in policy reads its query
(``diagnostics``), and notebook 01's toy problem (``toy``). Everything here stands in for what the paper uses
(real datasets, Qwen2.5-VL, SAM) so that the method runs on a laptop; none of it is part of the method."""
