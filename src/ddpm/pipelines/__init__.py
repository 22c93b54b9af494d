"""ddpm.pipelines"""
