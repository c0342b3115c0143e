// Same repositories as ExecuTorch's LlamaDemo (meta-pytorch/executorch-examples llm/android/LlamaDemo).
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}

rootProject.name = "SmolshipChat"

include(":app")
