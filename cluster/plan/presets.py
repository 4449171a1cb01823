"""Public configs of models users plan for before downloading (`plan --model glm-5`).

Only the fields the planner reads; values from each model's published config.json.
"""

_MLA_DSA = {
    "n_shared_experts": 1,
    "n_routed_experts": 256,
    "num_experts_per_tok": 8,
    "moe_intermediate_size": 2048,
    "first_k_dense_replace": 3,
    "moe_layer_freq": 1,
    "kv_lora_rank": 512,
    "qk_rope_head_dim": 64,
    "index_topk": 2048,
    "index_head_dim": 128,
    "num_nextn_predict_layers": 1,
    "tie_word_embeddings": False,
}

PRESETS: dict[str, dict] = {
    "glm-5": _MLA_DSA
    | {
        "model_type": "glm_moe_dsa",
        "hidden_size": 6144,
        "num_hidden_layers": 78,
        "num_attention_heads": 64,
        "num_key_value_heads": 64,
        "intermediate_size": 12288,
        "q_lora_rank": 2048,
        "qk_nope_head_dim": 192,
        "v_head_dim": 256,
        "index_n_heads": 32,
        "vocab_size": 154880,
        "max_position_embeddings": 202752,
    },
    "deepseek-v3.2": _MLA_DSA
    | {
        "model_type": "deepseek_v32",
        "hidden_size": 7168,
        "num_hidden_layers": 61,
        "num_attention_heads": 128,
        "num_key_value_heads": 128,
        "intermediate_size": 18432,
        "q_lora_rank": 1536,
        "qk_nope_head_dim": 128,
        "v_head_dim": 128,
        "index_n_heads": 64,
        "vocab_size": 129280,
        "max_position_embeddings": 163840,
    },
}
# GLM-5.1 is GLM-5's architecture and tensor shapes with new weights (zai-org/GLM-5.1; NVIDIA's
# Megatron Bridge maps both through one bridge), so it plans exactly as GLM-5.
PRESETS["glm-5.1"] = PRESETS["glm-5"]
